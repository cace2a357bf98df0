# opsd — see README.md. `make run` starts the daemon on the embedded
# quickstart config; `make test` runs every test.
GO       ?= go
BIN      ?= bin/opsd
PKG      := github.com/opsd-dev/opsd
VERSION  ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
COMMIT   ?= $(shell git rev-parse HEAD 2>/dev/null || echo unknown)
LDFLAGS  := -X $(PKG)/internal/buildinfo.Version=$(VERSION) -X $(PKG)/internal/buildinfo.Commit=$(COMMIT)
CONFIG   ?= examples/quickstart.yaml
STATICCHECK ?= $(shell command -v staticcheck 2>/dev/null || echo $(HOME)/go/bin/staticcheck)

.PHONY: all build run test test-short lint bench clean

all: build

build:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags "$(LDFLAGS)" -o $(BIN) ./cmd/opsd

run: build
	./$(BIN) serve --config $(CONFIG)

# The whole suite, with the race detector. Tests that need PostgreSQL,
# promtool and friends skip loudly outside CI and fail under CI=true.
test:
	$(GO) test -race -count=1 -timeout 25m ./...

test-short:
	$(GO) test -short -count=1 ./...

lint:
	$(GO) vet ./...
	@test -x "$(STATICCHECK)" || $(GO) install honnef.co/go/tools/cmd/staticcheck@v0.8.2
	$(STATICCHECK) ./...
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi

bench:
	./bench/run.sh

clean:
	rm -rf bin
