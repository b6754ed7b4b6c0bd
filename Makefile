# The two commands a newcomer needs (README.md):
#   make run    install pagesim and run the quickstart experiment (results + plots)
#   make test   install pagesim with its test and kernel extras and run the test suite
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip install --quiet --disable-pip-version-check
OUT    ?= results/quickstart
CONFIG ?= experiments/configs/quickstart.yaml

.PHONY: run test install install-test clean

$(PY):
	python3 -m venv $(VENV)

install: $(PY)
	$(PIP) -e .

# torch: with no NVIDIA GPU, the CPU build (the kernels then run under
# Triton's interpreter); with one, the default CUDA build.
install-test: $(PY)
	@if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then \
		$(PIP) torch; \
	else \
		$(PIP) 'torch==2.13.0+cpu' || $(PIP) torch --index-url https://download.pytorch.org/whl/cpu; \
	fi
	$(PIP) -e '.[kernels,test]'

run: install
	$(VENV)/bin/pagesim sweep $(CONFIG) --out $(OUT)

test: install-test
	$(PY) -m pytest -n 2 tests

clean:
	rm -rf $(VENV) results .pytest_cache .hypothesis
