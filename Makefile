# Pocketses developer entry points. The two that matter on a fresh machine:
#   make run    (or: cargo run --release)  the agent with default settings
#   make test   (or: cargo test)           every test; tests needing root/snapd say why they skip
.PHONY: run test lint bench bench-publisher

run:
	cargo run --release

test:
	cargo test

lint:
	cargo fmt --all -- --check
	cargo clippy --all-targets -- -D warnings

bench:
	cargo bench --bench collect

bench-publisher:
	cargo bench --bench publisher
