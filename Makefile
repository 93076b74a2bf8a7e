# Pocketses developer entry points. The two that matter on a fresh machine:
#   make run    (or: cargo run --release)  the agent with default settings
#   make test   (or: cargo test)           every test; tests needing root/snapd say why they skip
#                                          (and fail instead under CI=true)
# Snap: make snap (needs snapcraft with LXD or Multipass), then make install.
.PHONY: run test lint bench soak fuzz snap install check-snap

# snap needs root; use sudo only when not root already (CI and containers have no sudo).
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)

run:
	cargo run --release

test:
	cargo test

lint:
	cargo fmt --all -- --check
	cargo clippy --all-targets -- -D warnings

# CPU per collection; the whole agent's CPU per tick at 100/s and its RSS next to the
# simplest possible agent's, run side by side; start-up time; then the publisher: 1000 and
# 10,000 subscribers, p99 delivery latency, the file sink. Prints numbers, asserts nothing.
bench:
	cargo bench --bench collect
	cargo bench --bench tick
	cargo bench --bench publisher

# Ten minutes at 100 snapshots/s with subscriber churn, a flooder, a stalled reader and
# rotation; prints RSS and open descriptors over time. SOAK_SECONDS=60 for a short run.
# Then 16 starts with 3000 subscribers that never read, each checked for a snapshot and a
# clean SIGTERM (CROWD_RUNS, CROWD to change; fails if a run hangs).
soak:
	cargo bench --bench soak
	cargo bench --bench crowd

# Coverage-guided fuzzing of setting values, the snap document and snapd's answers, each
# target for FUZZ_SECONDS on one core; see fuzz/README.md. Needs `cargo install cargo-fuzz`;
# RUSTC_BOOTSTRAP lets the stable toolchain take cargo-fuzz's nightly-only flags.
FUZZ_SECONDS ?= 60
FUZZ_TARGETS := config_set snap_values envelope
fuzz:
	cd fuzz && for t in $(FUZZ_TARGETS); do \
		mkdir -p corpus/$$t && \
		RUSTC_BOOTSTRAP=1 cargo fuzz run -O -a $$t corpus/$$t seeds/$$t -- \
			-max_total_time=$(FUZZ_SECONDS) -print_final_stats=1 || exit 1; \
	done

snap:
	snapcraft pack

# Installs the newest pocketses_*.snap built here, whatever its architecture.
install:
	@snap=$$(ls -t pocketses_*.snap 2>/dev/null | head -n 1); \
	if [ -z "$$snap" ]; then echo "no pocketses_*.snap here: run 'make snap' first" >&2; exit 1; fi; \
	echo "$(SUDO) snap install --dangerous $$snap"; \
	$(SUDO) snap install --dangerous "$$snap"

# What CI checks about snap/ without snapcraft: schema, parts, hooks, apps, version, and
# `snap pack` of the layout snapcraft would prime (needs snapd and squashfs-tools).
check-snap:
	cargo test --test snap
