# Pocketses developer entry points. The two that matter on a fresh machine:
#   make run    (or: cargo run --release)  the agent with default settings
#   make test   (or: cargo test)           every test; tests needing root/snapd say why they skip
#                                          (and fail instead under CI=true)
# Snap: make snap (needs snapcraft with LXD or Multipass), then make install-snap.
# Without snapd: make install PREFIX=/usr/local (the binary and a systemd unit; DESTDIR too).
.PHONY: run test lint bench soak fuzz snap man install uninstall install-snap check-snap screenshot

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
	cargo bench --bench http
	cargo bench --bench mqtt

# The http sink's live page in headless Chromium, as docs/screenshot.png (the page test of
# tests/http.rs, which also checks what the page shows).
screenshot:
	POCKETSES_SCREENSHOT=$(CURDIR)/docs/screenshot.png cargo test --test http -- --exact \
		the_page_shows_the_snapshot_updates_and_says_when_the_agent_is_gone

# Ten minutes at 100 snapshots/s with subscriber churn, a flooder, a stalled reader and
# rotation; prints RSS and open descriptors over time. SOAK_SECONDS=60 for a short run.
# Then 16 starts with 3000 subscribers that never read, each checked for a snapshot and a
# clean SIGTERM (CROWD_RUNS, CROWD to change; fails if a run hangs). Then ten minutes with a
# mount whose statvfs never answers (needs root; POCKETSES_SOAK_SNAPSHOTS for another count):
# snapshots on schedule, threads and descriptors flat. `cargo test` runs a short version.
soak:
	cargo bench --bench soak
	cargo bench --bench crowd
	cargo test --test sources hung_mount_soak -- --ignored

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

# The manual page, from the same clap definition as --help and the completions.
man:
	cargo run --release --quiet -- man >pocketses.1
	@echo "wrote pocketses.1 (read it with: man -l pocketses.1)"

# The binary, the systemd unit (its ExecStart and EnvironmentFile rewritten to these paths),
# the manual page, completions for bash, zsh and fish (all three written by the binary
# itself) and, unless one is there already, /etc/default/pocketses with the service's flags.
# BIN=path installs that binary instead of building a release one (the tests do).
PREFIX ?= /usr/local
BINDIR ?= $(PREFIX)/bin
UNITDIR ?= $(PREFIX)/lib/systemd/system
SYSCONFDIR ?= /etc
DATADIR ?= $(PREFIX)/share
MANDIR ?= $(DATADIR)/man/man1
BIN ?=
install:
	@set -e; bin="$(BIN)"; \
	if [ -z "$$bin" ]; then cargo build --release; bin="$${CARGO_TARGET_DIR:-target}/release/pocketses"; fi; \
	install -D -m 0755 "$$bin" "$(DESTDIR)$(BINDIR)/pocketses"; \
	install -d "$(DESTDIR)$(UNITDIR)"; \
	sed -e 's|^ExecStart=/usr/local/bin/pocketses|ExecStart=$(BINDIR)/pocketses|' \
		-e 's|^EnvironmentFile=-/etc/default/pocketses|EnvironmentFile=-$(SYSCONFDIR)/default/pocketses|' \
		contrib/systemd/pocketses.service >"$(DESTDIR)$(UNITDIR)/pocketses.service"; \
	chmod 0644 "$(DESTDIR)$(UNITDIR)/pocketses.service"; \
	install -d "$(DESTDIR)$(MANDIR)" "$(DESTDIR)$(DATADIR)/bash-completion/completions" \
		"$(DESTDIR)$(DATADIR)/zsh/site-functions" "$(DESTDIR)$(DATADIR)/fish/vendor_completions.d"; \
	"$$bin" man >"$(DESTDIR)$(MANDIR)/pocketses.1"; \
	"$$bin" completions bash >"$(DESTDIR)$(DATADIR)/bash-completion/completions/pocketses"; \
	"$$bin" completions zsh >"$(DESTDIR)$(DATADIR)/zsh/site-functions/_pocketses"; \
	"$$bin" completions fish >"$(DESTDIR)$(DATADIR)/fish/vendor_completions.d/pocketses.fish"; \
	if [ ! -e "$(DESTDIR)$(SYSCONFDIR)/default/pocketses" ]; then \
		install -D -m 0644 contrib/systemd/pocketses.default "$(DESTDIR)$(SYSCONFDIR)/default/pocketses"; \
	fi; \
	echo "installed $(DESTDIR)$(BINDIR)/pocketses, $(DESTDIR)$(UNITDIR)/pocketses.service, the manual page and completions"

# Leaves $(SYSCONFDIR)/default/pocketses (your settings) and /var/lib/pocketses (its data).
uninstall:
	rm -f "$(DESTDIR)$(BINDIR)/pocketses" "$(DESTDIR)$(UNITDIR)/pocketses.service" \
		"$(DESTDIR)$(MANDIR)/pocketses.1" \
		"$(DESTDIR)$(DATADIR)/bash-completion/completions/pocketses" \
		"$(DESTDIR)$(DATADIR)/zsh/site-functions/_pocketses" \
		"$(DESTDIR)$(DATADIR)/fish/vendor_completions.d/pocketses.fish"

# Installs the newest pocketses_*.snap built here, whatever its architecture.
install-snap:
	@snap=$$(ls -t pocketses_*.snap 2>/dev/null | head -n 1); \
	if [ -z "$$snap" ]; then echo "no pocketses_*.snap here: run 'make snap' first" >&2; exit 1; fi; \
	echo "$(SUDO) snap install --dangerous $$snap"; \
	$(SUDO) snap install --dangerous "$$snap"

# What CI checks about snap/ without snapcraft: schema, parts, hooks, apps, version, and
# `snap pack` of the layout snapcraft would prime (needs snapd and squashfs-tools).
check-snap:
	cargo test --test snap
