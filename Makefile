# charrnn: `make demo` installs, fetches a corpus, trains, samples and evaluates; `make test` tests.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
EXTRAS ?= dev,torch,export,plot,serve,tensorboard,wandb,sweep
DEMO_TIME ?= 2m

.PHONY: install test demo data bench lint clean

install: $(VENV)/.installed-$(EXTRAS)

$(VENV)/.installed-$(EXTRAS): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[$(EXTRAS)]'
	touch $@

test: install
	$(BIN)/python -m pytest -q

data: data/shakespeare.txt

data/shakespeare.txt: data/build_shakespeare.py | install
	$(BIN)/python data/build_shakespeare.py $@

demo: install data
	$(BIN)/charrnn train data/shakespeare.txt -c configs/tiny.yaml -o runs/demo --fresh --time $(DEMO_TIME)
	@echo "--- 300 characters sampled from runs/demo (temperature 0.8) ---"
	$(BIN)/charrnn sample -m runs/demo -n 300 -t 0.8 --seed 1 -p "ROMEO:"
	@echo
	@echo "--- held-out text (the last 10% of the corpus, never trained on) ---"
	$(BIN)/charrnn eval -m runs/demo data/shakespeare-valid.txt

bench: install
	$(BIN)/python benchmarks/bench.py

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache .hypothesis
