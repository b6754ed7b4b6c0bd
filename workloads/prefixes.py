"""Synthetic shared prefixes: what a prefix cache can reuse in a workload
whose trace does not say.

* **System prompts** (``shared_tokens: N, tenants: K``): every request
  belongs to one of ``K`` tenants (uniformly at random) and its prompt starts
  with its tenant's ``N``-token system prompt, before the drawn prompt.
* **Conversations** (``turns: T, think_time_s: X``): requests come in
  conversations of ``T`` turns. The arrival process places each
  conversation's first turn, at ``1 / T`` of its rate, so that requests still
  arrive at about the configured rate; turn ``i + 1`` arrives an exponential
  think time (mean ``X``) after turn ``i`` *arrived* -- open loop: arrivals are
  fixed before the simulation, so a turn may arrive before the previous
  answer is complete (its prefix is then not yet cached, as in a real
  engine). Its prompt is the previous turn's prompt, its answer and a new
  message (a drawn prompt length).

Content ids: tenant ``t``'s system prompt is ``t``; every other segment --
a message, an answer -- gets its own id from ``K`` up, so only what is
meant to repeat repeats.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class PrefixPlan:
    shared_tokens: int = 0
    tenants: int = 1
    turns: int = 1
    think_time_s: float = 0.0


def with_prefixes(arrival_s: np.ndarray, prompt_tokens: np.ndarray, output_tokens: np.ndarray,
                  plan: PrefixPlan, rng: np.random.Generator,
                  base: tuple | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple]:
    """Arrivals, prompts, outputs and segments with the plan's prefixes, in
    arrival order. ``arrival_s`` are the first turns' arrivals when
    ``turns > 1`` (one per conversation; the caller draws ``ceil(n / turns)``);
    ``prompt_tokens``/``output_tokens`` hold one drawn length per request.
    ``base``: segments the requests already have (a trace's), kept after the
    system prompt (content ids from the trace must not collide with ``0 ..
    tenants - 1`` and the ids handed out here: they come from a hashed trace,
    whose ids are large, and its answers' negative ids)."""
    n = len(prompt_tokens)
    next_id = plan.tenants
    rows = []                                   # (arrival, prompt, output, segments)
    tenant = rng.integers(0, plan.tenants, size=max(1, len(arrival_s))) if plan.shared_tokens else None
    think = rng.exponential(plan.think_time_s, size=n) if plan.turns > 1 else None
    k = 0                                       # index into the drawn lengths
    for c, start in enumerate(arrival_s):
        history: tuple = ((int(tenant[c]), plan.shared_tokens),) if plan.shared_tokens else ()
        t = float(start)
        for turn in range(plan.turns):
            if k == n:
                break
            if turn:
                t += float(think[k])
            if base is None:
                message: tuple = ((next_id, int(prompt_tokens[k])),)
                answer = (next_id + 1, int(output_tokens[k]))
                next_id += 2
            else:
                message, answer = tuple(base[k][:-1]), tuple(base[k][-1])
            prompt = history + message
            rows.append((t, sum(length for _, length in prompt), answer[1], prompt + (answer,)))
            history = prompt + (answer,)
            k += 1
    rows.sort(key=lambda r: r[0])               # stable: a conversation keeps its turn order
    return (np.array([r[0] for r in rows], np.float64), np.array([r[1] for r in rows], np.int64),
            np.array([r[2] for r in rows], np.int64), tuple(r[3] for r in rows))
