# ferrofn: the commands a user types. `make test` is exactly what CI runs (.ci/run calls it).
SHELL := /bin/bash
CARGO ?= cargo
FUNCTIONS := -p ferrofn-fn-testfn -p ferrofn-fn-hello -p ferrofn-fn-status

.PHONY: all build images lint prereqs test soak demo demo-ha down bench deny

all: build

## Build every crate of the workspace (static binaries under target/x86_64-unknown-linux-gnu/debug).
build:
	$(CARGO) build --workspace

## Build every image on the local Docker engine, FROM scratch: the functions (testfn, hello, status),
## the nodes (ferrofn/lb, ferrofn/runner) and the HA cluster's ferrofn/postgres and ferrofn/nginx (from
## the host's Debian packages).
images:
	$(CARGO) build $(FUNCTIONS) -p ferrofn-lb -p ferrofn-runner
	FERROFN_IMAGE_TAG=latest $(CARGO) run -q -p ferrofn-tests --bin ferrofn-images
	FERROFN_IMAGE_TAG=latest FERROFN_SKIP_CARGO=1 bash deploy/images.sh
	FERROFN_IMAGE_TAG=latest bash deploy/images-ha.sh

## Formatting and lints, as CI enforces them.
lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

## Supply chain: licenses, banned crates and sources of every dependency (deny.toml; needs
## `cargo install --locked cargo-deny`). Advisories need the advisory database from the network:
## `cargo deny check advisories` where it is reachable.
deny:
	$(CARGO) deny check licenses bans sources

## The tools `make test` needs (one line per missing one, with its install command).
prereqs:
	bash deploy/prereqs.sh

## Everything CI runs: lints, the images, then every unit and integration test (real Docker, real TLS).
test: prereqs lint images
	$(CARGO) test --workspace --no-fail-fast

## The long forms of the correctness-under-load tests (issue 10), not part of `make test` (which runs
## their short forms): the load test at 30 s per scenario (1 and 3 runners, plaintext and mTLS, 16/64/256
## clients), a runner SIGKILLed under load, and one connection through >= 100,000 Engage calls,
## 20,000 NACKs and 1,000 client cancels. Prints one line per scenario.
soak:
	FERROFN_LOAD_SECS=30 FERROFN_ENDURANCE_SCALE=20 $(CARGO) test -p ferrofn-tests \
		--no-fail-fast --test load --test load_faults --test engage_endurance -- --include-ignored --nocapture --test-threads 1

## A local cluster (one LB, three runners, mTLS) answering a function call.
demo:
	bash deploy/demo.sh

## The HA cluster: Postgres, two LBs sharing it, nginx in front of both, three runner replicas (mTLS).
demo-ha:
	FERROFN_HA=1 bash deploy/demo.sh

## Remove everything `make demo` and `make demo-ha` started: containers, function containers,
## networks, volumes.
down:
	bash deploy/down.sh
	FERROFN_HA=1 bash deploy/down.sh

## The performance targets of issue 11 in one run: release builds; loopback clusters (plaintext and
## mTLS, LB + runners as processes, real Docker) and the compose demo cluster measured against the
## physical floor; the placement simulator; criterion benches. Ends with the TARGETS table
## (bench-results/targets.txt). BENCH_SKIP_COMPOSE=1 skips the compose cluster.
bench:
	bash bench/run.sh
