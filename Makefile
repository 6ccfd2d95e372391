# mntv2: `make test` is the one test command (unit and privileged tests).
GO        ?= go
BIN       := bin/mntv2
CRIU      ?= criu
FUZZTIME  ?= 1m
PKGS      := ./...

.PHONY: all build test lint vet fmt-check staticcheck e2e e2e-criu e2e-runc e2e-random soak zdtm bench fuzz demo clean

all: build

build:
	$(GO) build -o $(BIN) ./cmd/mntv2

# Unit tests and privileged tests. Privileged tests re-run themselves in a
# new private mount namespace; as non-root they skip with a message, in CI
# (CI=true) they fail instead.
test: build
	$(GO) test -count=1 $(PKGS)

lint: vet fmt-check staticcheck

vet:
	$(GO) vet $(PKGS)

fmt-check:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt would change: $$out"; exit 1; fi

staticcheck:
	$(GO) run honnef.co/go/tools/cmd/staticcheck@v0.7.0 $(PKGS)

# End-to-end runs with a real CRIU, every part: CRIU=/path/to/criu make e2e
# (README, "End-to-end tests", says what each part holds and takes).
e2e: e2e-criu e2e-runc e2e-random zdtm

# The fixtures' and testdata/e2e's scenarios in containers, dumped by CRIU
# and restored by CRIU alone, CRIU + mntv2 (reduce and strip) and mntv2
# restore; the failure paths; go-criu v7 and v8 RPC.
e2e-criu: build
	CRIU=$(CRIU) hack/e2e-criu.sh

# Real runc (Debian's 1.1) and podman: checkpoint, then restore with CRIU
# alone and with mntv2 as the action script of /etc/criu/runc.conf (strict).
# CRIU must be 3.19 or later: make e2e-runc CRIU=/path/to/criu-4.2/criu
e2e-runc: build
	CRIU=$(CRIU) hack/e2e-runc.sh

# Random trees (hack/randtree) restored several ways and compared
# (hack/diff-runner.sh): the CI set of 50 seeds and the failures kept in
# testdata/e2e/*-random-*, or SEEDS seeds from
# SEED_START (a number or "random") for a soak: make soak SEEDS=200
SEEDS      ?= 200
SEED_START ?= 1
e2e-random: build
	CRIU=$(CRIU) hack/diff-runner.sh

soak: build
	CRIU=$(CRIU) SEEDS=$(SEEDS) SEED_START=$(SEED_START) hack/diff-runner.sh

# CRIU's zdtm mount tests, CRIU alone and with mntv2, both CRIU modes; builds
# CRIU 4.2 from ../shared/tools in ZDTM_DIR (default /var/tmp/mntv2-zdtm).
zdtm: build
	hack/zdtm.sh

bench: build
	hack/bench.sh

# Every fuzz target for FUZZTIME each (no test timeout: go test's default
# of 10 minutes would end longer runs).
FUZZ = $(GO) test -run '^$$' -timeout 0 -fuzztime $(FUZZTIME) -fuzz
fuzz:
	$(FUZZ) '^FuzzParse$$' ./images
	$(FUZZ) '^FuzzBuildFromImage$$' ./forest
	$(FUZZ) '^FuzzMountinfo$$' ./forest
	$(FUZZ) '^FuzzPlan$$' ./restore
	$(FUZZ) '^FuzzTmpfs$$' ./restore

demo: build
	hack/demo.sh

clean:
	rm -rf bin
