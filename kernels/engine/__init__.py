"""The real serving engine: the simulator's own policy and KV-manager objects
(``sim.policies``, ``sim.memory``) driven against wall-clock time on the GPU
(DESIGN.md rule 1; the one place ``kernels`` imports ``sim``).

* ``loop.serve`` -- arrivals in real time, ``schedule -> run -> on_step_done``;
* ``runner.ModelRunner`` -- a ``Batch`` to a real step over the manager's
  memory: inputs, padding, CUDA-graph buckets, swap copies;
* ``memory.plan`` -- the KV capacity the engine derives from the device;
* ``tensor_parallel`` -- one replica on several GPUs: rank 0 runs all of
  the above, the other ranks mirror its runner's device work.

``pagesim serve`` (experiments/serve.py) builds these from a config.
"""
