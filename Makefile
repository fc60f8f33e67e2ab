# CalicoSharp — entry points. Run as root on Debian: the targets install what they need.
SHELL := /bin/bash
.DEFAULT_GOAL := build

CONFIG      ?= Release
RID         ?= linux-x64
OUT         ?= $(CURDIR)/out
BIN         := $(OUT)/bin
RESULTS     := $(OUT)/test-results
# Each test etcd writes its process id here while it runs; make test stops what a crashed test left, by id
TEST_PIDS   := $(OUT)/test-pids
DEB_PACKAGES := etcd-server etcd-client bird2 containernetworking-plugins iproute2 iputils-ping netcat-openbsd curl podman runc busybox-static iptables nftables socat nghttp2-client
PREFIX      ?= /usr/local
CNI_BIN_DIR ?= /opt/cni/bin
CNI_NET_DIR ?= /etc/cni/net.d
# Test selection, e.g. make test FILTER='Category!=Etcd'. The long fuzz run has its own target.
FILTER      ?= Category!=Fuzz
# make fuzz: how many mutated BGP messages (and which seed; default: a new one each run)
BGP_FUZZ_INPUTS ?= 1000000

.PHONY: deps restore build publish test test-unit fuzz bench demo install clean

## deps: install the Debian packages the lab, tests and benchmarks use (apt-get update once, only when something is missing)
deps:
	@missing=""; for p in $(DEB_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  export DEBIAN_FRONTEND=noninteractive; \
	  apt-get update -q && apt-get install -y -q --no-install-recommends $$missing; \
	fi
	@command -v etcd >/dev/null || { echo "etcd not found after installing etcd-server" >&2; exit 1; }

restore:
	dotnet restore CalicoSharp.sln

build: restore
	dotnet build CalicoSharp.sln -c $(CONFIG) --no-restore -nologo -clp:ErrorsOnly

## publish: NativeAOT executables into out/bin
EXES := ipam/calicosharpctl/calicosharpctl.csproj cni/calicosharp/calicosharp.csproj cni/calicosharp-ipam/calicosharp-ipam.csproj bgpd/calicosharp-bgpd/calicosharp-bgpd.csproj
publish: restore
	@for p in $(EXES); do dotnet publish $$p -c Release -r $(RID) -o $(BIN) -nologo -clp:ErrorsOnly -p:DebugType=none -p:StripSymbols=true || exit 1; done

## test: every test, unit and lab; prints 'N passed, N failed'
test: deps build
	@rm -rf $(RESULTS); mkdir -p $(RESULTS) $(TEST_PIDS)
	@status=0; \
	CALICOSHARP_TEST_PID_DIR=$(TEST_PIDS) dotnet test CalicoSharp.sln -c $(CONFIG) --no-build -nologo -m:1 \
	  --logger "trx" --logger "console;verbosity=minimal" --results-directory $(RESULTS) \
	  $(if $(FILTER),--filter "$(FILTER)") || status=$$?; \
	for f in $(TEST_PIDS)/*.pid; do \
	  [ -f "$$f" ] || continue; pid=$$(cat "$$f"); \
	  if grep -qa -- '--name.calicosharp-test-etcd' /proc/$$pid/cmdline 2>/dev/null; then kill $$pid 2>/dev/null || true; fi; \
	  rm -f "$$f"; \
	done; \
	passed=0; failed=0; skipped=0; \
	for f in $(RESULTS)/*.trx; do \
	  [ -f "$$f" ] || continue; \
	  c=$$(grep -o '<Counters [^>]*>' "$$f"); \
	  p=$$(sed -n 's/.* passed="\([0-9]*\)".*/\1/p' <<<"$$c"); \
	  fl=$$(sed -n 's/.* failed="\([0-9]*\)".*/\1/p' <<<"$$c"); \
	  n=$$(sed -n 's/.* notExecuted="\([0-9]*\)".*/\1/p' <<<"$$c"); \
	  passed=$$((passed+$${p:-0})); failed=$$((failed+$${fl:-0})); skipped=$$((skipped+$${n:-0})); \
	done; \
	echo "$$passed passed, $$failed failed, $$skipped skipped"; \
	if [ $$status -ne 0 ] && [ $$failed -eq 0 ]; then echo "dotnet test exited $$status" >&2; fi; \
	exit $$status

## test-unit: the tests that need neither root nor etcd
test-unit: build
	dotnet test CalicoSharp.sln -c $(CONFIG) --no-build -nologo --filter "Category!=Etcd&Category!=Privileged&Category!=Fuzz"

## fuzz: the long BGP decoder fuzz run (BGP_FUZZ_INPUTS mutated messages, BGP_FUZZ_SEED to repeat a run)
fuzz: build
	BGP_FUZZ_INPUTS=$(BGP_FUZZ_INPUTS) dotnet test tests/CalicoSharp.Bgp.Tests -c $(CONFIG) --no-build -nologo --filter "Category=Fuzz" --logger "console;verbosity=normal"

## bench: benchmarks (printed, never asserted), against the reference implementations in the same run; BENCH picks one
## part (ipam, cni, bgp, peer-memory, bgpd, kernel, restart, bfd, service-trace, service-rules, rpc), e.g. make bench BENCH=restart
## (rpc: the gRPC server under h2load beside Kestrel's; run the dll directly for its args [requests [clients [streams per client]]])
bench: deps build publish
	dotnet publish tests/CalicoSharp.IpamLoad/CalicoSharp.IpamLoad.csproj -c Release -r $(RID) -o $(OUT)/bench -nologo -clp:ErrorsOnly
	dotnet tests/CalicoSharp.Bench/bin/$(CONFIG)/net10.0/CalicoSharp.Bench.dll $(BENCH)

## demo: build, then the lab: etcd, a ToR running BIRD 2, 3 nodes running bgpd, 2 pods each; shows and checks
## cross-node pod traffic and a trace, then removes everything (also on Ctrl-C or failure)
demo: deps publish
	dotnet build tests/CalicoSharp.Demo/CalicoSharp.Demo.csproj -c $(CONFIG) -nologo -clp:ErrorsOnly
	dotnet tests/CalicoSharp.Demo/bin/$(CONFIG)/net10.0/CalicoSharp.Demo.dll --bin $(BIN)

## install: NativeAOT binaries: the CLI and bgpd into $(PREFIX)/bin (bgpd with a systemd unit), the CNI plugins into $(CNI_BIN_DIR), the sample conflist into $(CNI_NET_DIR)
install: publish
	install -d $(DESTDIR)$(PREFIX)/bin $(DESTDIR)$(CNI_BIN_DIR) $(DESTDIR)$(CNI_NET_DIR) $(DESTDIR)/etc/systemd/system $(DESTDIR)/etc/iproute2/rt_protos.d
	install -m 0755 $(BIN)/calicosharpctl $(DESTDIR)$(PREFIX)/bin/calicosharpctl
	install -m 0755 $(BIN)/calicosharp-bgpd $(DESTDIR)$(PREFIX)/bin/calicosharp-bgpd
	install -m 0644 bgpd/calicosharp-bgpd.service $(DESTDIR)/etc/systemd/system/calicosharp-bgpd.service
	install -m 0644 bgpd/rt_protos.calicosharp.conf $(DESTDIR)/etc/iproute2/rt_protos.d/calicosharp.conf
	install -m 0755 $(BIN)/calicosharp $(BIN)/calicosharp-ipam $(DESTDIR)$(CNI_BIN_DIR)/
	install -m 0644 cni/10-calicosharp.conflist $(DESTDIR)$(CNI_NET_DIR)/10-calicosharp.conflist

clean:
	rm -rf $(OUT)
	dotnet clean CalicoSharp.sln -nologo -v q
