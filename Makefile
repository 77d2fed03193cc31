# baton: the two commands a newcomer types are `make run` and `make test`.
# Both install whatever Debian packages are missing first (apt-get, with sudo
# when not root), so they work on a fresh Debian 12 machine.

BUILD      ?= build
BUILD_TEST ?= build-asan
JOBS       ?= $(shell nproc 2>/dev/null || echo 2)
BATON      := $(BUILD)/bot/baton

PKGS := build-essential cmake pkg-config clang-format git valgrind \
        libwebsockets-dev libcurl4-openssl-dev libjansson-dev libpq-dev postgresql openssl \
        libpcre2-dev libsqlite3-dev libyaml-dev libssl-dev \
        chromium fonts-dejavu-core ansible-core
# The browser tests drive Debian's chromium with playwright-core from npm;
# Node.js and npm come from Debian unless the machine already has them.
NODE_PKGS := nodejs npm
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: all deps build run test test-build format format-check bench clean valgrind

all: build

deps:
	@missing=""; \
	for p in $(PKGS); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'ok installed' || missing="$$missing $$p"; \
	done; \
	command -v node >/dev/null && command -v npm >/dev/null || missing="$$missing $(NODE_PKGS)"; \
	if [ -n "$$missing" ]; then \
	  echo "baton: installing missing packages:$$missing"; \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $$missing; \
	fi

build: deps
	cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
	cmake --build $(BUILD) -j $(JOBS)

# Starts the daemon on the embedded defaults (SQLite, built-in inventory,
# local runner) and prints the console's address with a sign-in link for
# each demo user (tokens are new each time; only their hashes are stored).
CONSOLE ?= 127.0.0.1:8080

run: build
	@$(BATON) check
	@echo
	@echo "baton console: http://$(CONSOLE)/"
	@for u in alice bob carol erin; do \
	  echo "  sign in as $$u: http://$(CONSOLE)/#token=$$($(BATON) token $$u 2>/dev/null)"; \
	done
	@echo "(Ctrl-C stops baton)"
	@echo
	exec $(BATON) serve --listen $(CONSOLE)

test-build: deps
	cmake -S . -B $(BUILD_TEST) -DCMAKE_BUILD_TYPE=Debug -DBATON_SANITIZE=ON >/dev/null
	cmake --build $(BUILD_TEST) -j $(JOBS)

# Sanitizer build first (ASan+UBSan), then the same suite under valgrind.
test: test-build format-check
	cd $(BUILD_TEST) && ctest --output-on-failure -j $(JOBS) --timeout 300
	$(MAKE) --no-print-directory valgrind

SOURCES = $(shell git ls-files -co --exclude-standard -- '*.c' '*.h' 2>/dev/null)

format:
	clang-format -i $(SOURCES)

format-check: deps
	@clang-format --dry-run -Werror $(SOURCES) && echo "clang-format: clean"

BUILD_BENCH ?= build-bench

bench: deps
	cmake -S . -B $(BUILD_BENCH) -DCMAKE_BUILD_TYPE=Release >/dev/null
	cmake --build $(BUILD_BENCH) -j $(JOBS) --target bench_pipeline ws_echo ws_load baton
	$(BUILD_BENCH)/tests/bench/bench_pipeline 5000
	tests/bench/run_ws_bench.sh $(BUILD_BENCH)

clean:
	rm -rf $(BUILD) $(BUILD_TEST) $(BUILD_BENCH)

# The whole suite under valgrind (no sanitizers): every test must be free of
# memory errors and leaks.
BUILD_VG ?= build-vg

valgrind: deps
	cmake -S . -B $(BUILD_VG) -DCMAKE_BUILD_TYPE=Debug -DBATON_SANITIZE=OFF -DBATON_VALGRIND=ON >/dev/null
	cmake --build $(BUILD_VG) -j $(JOBS)
	cd $(BUILD_VG) && ctest --output-on-failure -j $(JOBS) --timeout 900
