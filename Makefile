# sockmesh — run `make help` for the targets.
SHELL := /bin/bash

# The BPF objects are committed; `make generate` rebuilds them with this
# exact compiler so the output is the same on every machine of this kind.
BPF_CLANG ?= clang-14
BPF_STRIP ?= llvm-strip-14
BPF_CFLAGS := -O2 -g -Wall -Werror -mcpu=v3 -I/usr/include/$(shell uname -m)-linux-gnu
STATICCHECK := honnef.co/go/tools/cmd/staticcheck@v0.8.2
GO_TEST_FLAGS ?= -count=1

# Debian packages the build and the tests need. The servers and load tools
# are what the benchmark harness compares against; make test runs a smoke
# version of it, so they are needed there too.
APT_PACKAGES := clang-14 llvm-14 libbpf-dev dnsutils curl python3 \
	iperf3 haproxy nftables iptables dnsperf unbound etcd-server

.PHONY: help deps generate check-generated build test fuzz bench run lint

help: ## Show the targets.
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-16s %s\n", $$1, $$2}'

# apt_install installs the Debian packages in $(1) that are missing. A
# temporary policy-rc.d keeps the servers among them from starting as
# system services: the benchmarks start their own, on loopback.
define apt_install
	@missing=$$(for p in $(1); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing: $$missing"; \
		guard=; if [ ! -e /usr/sbin/policy-rc.d ]; then printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d && guard=1; fi; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; rc=$$?; \
		if [ -n "$$guard" ]; then rm -f /usr/sbin/policy-rc.d; fi; exit $$rc; \
	fi
endef

deps: ## Install the tools the build and tests need (Debian, root), if missing.
	$(call apt_install,$(APT_PACKAGES))

generate: deps ## Rebuild the BPF objects and Go bindings from bpf/ (commit the result).
	cd lb && BPF_OUT=. BPF_CLANG=$(BPF_CLANG) BPF_STRIP=$(BPF_STRIP) BPF_CFLAGS="$(BPF_CFLAGS)" go generate ./...

check-generated: deps ## Fail if the committed BPF objects are stale against bpf/.
	@tmp=$$(mktemp -d); trap 'rm -rf $$tmp' EXIT; \
	(cd lb && BPF_OUT=$$tmp BPF_CLANG=$(BPF_CLANG) BPF_STRIP=$(BPF_STRIP) BPF_CFLAGS="$(BPF_CFLAGS)" go generate ./...) || exit 1; \
	stale=0; for f in $$tmp/*; do \
		cmp -s $$f lb/$$(basename $$f) || { echo "stale: lb/$$(basename $$f) (run make generate and commit)"; stale=1; }; \
	done; exit $$stale

build: ## Build everything.
	go build ./...

test: deps check-generated ## Install what the tests need and run them all (root runs the kernel tests).
	go vet ./...
	go test $(GO_TEST_FLAGS) ./...
	$(MAKE) fuzz FUZZSCALE=1

# Fuzz budgets are counts of runs, not durations: go1.26's fuzz coordinator
# can fail a run that ends on its deadline with "context deadline exceeded"
# and no failing input (golang/go#75804, fixed in go1.27). Minimizing each
# new interesting input is capped too: uncapped (60 s each) it stalled
# FuzzParse for the rest of a 10 s run. FUZZSCALE=1 is about 10 s per
# target here.
FUZZSCALE ?= 6
FUZZMIN = -fuzzminimizetime 500x
fuzz: ## Fuzz the service-file parser, the DNS handler and its fast path, the registry URL parser (FUZZSCALE=1: about 10 s each; default 6).
	go test -run '^$$' -fuzz '^FuzzParse$$' -fuzztime $$((60000 * $(FUZZSCALE)))x $(FUZZMIN) ./servicefile
	go test -run '^$$' -fuzz '^FuzzHandler$$' -fuzztime $$((150000 * $(FUZZSCALE)))x $(FUZZMIN) ./dnsstub
	go test -run '^$$' -fuzz '^FuzzFastPath$$' -fuzztime $$((150000 * $(FUZZSCALE)))x $(FUZZMIN) ./dnsstub
	go test -run '^$$' -fuzz '^FuzzParseURL$$' -fuzztime $$((80000 * $(FUZZSCALE)))x $(FUZZMIN) ./etcdsource

bench: deps sockmesh ## Run the benchmarks as root (about 8 min): the harness writes bench/results/<date>.md and .png; then the package benchmarks.
	go run ./bench -sockmesh ./sockmesh -out bench/results
	go test -run '^$$' -bench . -benchtime=1x ./lb ./registry ./etcdsource ./cmd/sockmesh

sockmesh: $(shell git ls-files '*.go' go.mod go.sum 'lb/*.o' 2>/dev/null)
	go build -ldflags "-X main.version=$$(git describe --always --dirty 2>/dev/null || echo dev)" -o sockmesh ./cmd/sockmesh

run: sockmesh ## Run sockmesh on the shipped services.d/ with demo backends, scoped to the cgroup sockmesh-demo (root).
	$(call apt_install,curl)
	./scripts/run-demo.sh

lint: ## gofmt, go vet, staticcheck.
	@out=$$(gofmt -l $$(git ls-files '*.go')); [ -z "$$out" ] || { echo "gofmt: $$out"; exit 1; }
	go vet ./...
	go run $(STATICCHECK) ./...
