# wasmedge-shim: everything runs inside a Debian 13 root (WasmEdge 0.14.1, containerd 1.7,
# runc, crun) that `make env` builds once and caches outside the checkout.
SHELL := /bin/bash
REPO := $(CURDIR)
IN_ENV := $(REPO)/packaging/env/in-env.sh
BIN := $(REPO)/target/env/release
BUNDLES := $(REPO)/target/test-bundles
SOCK := /run/wshim/containerd.sock
CTR := ctr --address $(SOCK)
RUNTIME := io.containerd.wasmedge.v1
# Sleeping wasm containers started at once by `make bench` (benches/density.sh).
DENSITY_N ?= 1000
export WSHIM_BIN := $(BIN)


.PHONY: env env-clean in-env build bundles containerd-up containerd-down ctr demo test unit-test e2e-test bench clean

## env: build (once) the Debian 13 environment
env:
	@$(REPO)/packaging/env/mkenv.sh >/dev/null

## env-clean: remove every environment root but the current one (none may be in use)
env-clean:
	@cur=$$($(REPO)/packaging/env/mkenv.sh); for r in $$(dirname $$cur)/trixie-*; do [ "$$r" = "$$cur" ] || rm -rf --one-file-system "$$r"; done

## in-env CMD='...': run a command inside the environment, as root, repo at the same path
in-env: env
	@$(IN_ENV) bash -c '$(CMD)'

## build: the shim binaries and the image tool (release)
build: env
	$(IN_ENV) cargo build --release --workspace --bins

## bundles: the test wasm programs and their OCI image archives
bundles: build
	$(IN_ENV) make -s -C test-bundles OUT=$(BUNDLES) IMG=$(BIN)/wasm-oci

## containerd-up / containerd-down: the private containerd (socket $(SOCK) inside the env)
containerd-up: build
	$(IN_ENV) env WSHIM_BIN=$(BIN) packaging/containerd/up.sh

containerd-down: env
	$(IN_ENV) packaging/containerd/down.sh

## ctr ARGS='...': ctr against the private containerd
ctr: env
	@$(IN_ENV) $(CTR) $(ARGS)

## demo: environment, build, private containerd, import the hello image, run it
demo: containerd-up bundles
	$(IN_ENV) $(CTR) image import --all-platforms $(BUNDLES)/hello.tar
	$(IN_ENV) $(CTR) run --rm --runtime $(RUNTIME) --platform wasi/wasm docker.io/wshim-test/hello:latest wshim-demo

## test: every test (unit and end-to-end through the private containerd); the benches are
## compiled too, so that `make bench` cannot be broken unseen
test: containerd-up bundles
	$(IN_ENV) cargo build --release --workspace --benches
	$(IN_ENV) cargo test --release --workspace --no-fail-fast; rc=$$?; \
	$(IN_ENV) packaging/containerd/down.sh || rc=1; exit $$rc

## bench: criterion benches, the stress tool, memory per container, density (DENSITY_N
## containers at once) and the end-to-end comparison with runc and crun
STRESS_TASKS ?= 2000
STRESS_CONCURRENCY ?= 4
bench: containerd-up bundles
	$(IN_ENV) cargo bench -p wshim-benches --bench in_process
	$(IN_ENV) cargo bench -p wshim-benches --bench shim
	$(IN_ENV) $(BIN)/wshim-stress --tasks $(STRESS_TASKS) --concurrency $(STRESS_CONCURRENCY) --json target/bench/stress.json
	$(IN_ENV) $(BIN)/wshim-stress --tasks $(STRESS_TASKS) --concurrency $(STRESS_CONCURRENCY) --fresh-tasks 0 --pod-namespaces --json target/bench/stress-pod-namespaces.json
	$(IN_ENV) benches/memory.sh
	$(IN_ENV) env N=$(DENSITY_N) benches/density.sh
	$(IN_ENV) benches/e2e.sh
	python3 benches/report.py

clean:
	rm -rf target
