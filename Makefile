# ngx_http_matrix_module
#
#   make                 module (build/ngx_http_matrix_module.so) and build/matrix-tool
#   make NGINX_SRC=DIR   against another nginx source tree (>= 1.22)
#   make test            unit tests and nginx tests (t/)
#   make demo            the demo in the background: the reference silo, nginx with
#                        the module (localhost:8448, TLS) and a visiting server
#   make demo-stop       stop it
#   make bench           benchmarks (bench/)
#   make deps            install the Debian packages the above need
#   make node-deps       the test tools' npm packages (t/tools/package.json)
#                        into build/node/node_modules

SHELL       := /bin/bash
NGINX_SRC   ?= /usr/share/nginx/src
BUILD       := build
NGX_BUILD   := $(BUILD)/nginx
SPEC        ?= $(abspath ../shared/spec)

CC          ?= cc
CFLAGS      ?= -O2 -g
MX_CFLAGS   := -std=c11 -D_POSIX_C_SOURCE=200809L -Wall -Wextra -Werror \
               -Isrc/core $(CFLAGS)
MX_LIBS     := -ljansson -lsodium
PQ_INCDIR   := $(shell pg_config --includedir 2>/dev/null || echo /usr/include/postgresql)

CORE_SRCS   := $(wildcard src/core/*.c)
CORE_HDRS   := $(wildcard src/core/*.h)
CORE_OBJS   := $(CORE_SRCS:src/core/%.c=$(BUILD)/core/%.o)
SQL_FILES   := $(wildcard sql/[0-9]*.sql)
MODULE_SRCS := config $(wildcard src/*.c src/*.h) $(CORE_SRCS) $(CORE_HDRS)

DEB_PACKAGES := build-essential nginx nginx-dev libjansson-dev libsodium-dev \
                libssl-dev libpq-dev libpcre3-dev zlib1g-dev \
                libtest-base-perl libtext-diff-perl liburi-perl libwww-perl \
                libipc-run-perl python3-signedjson python3-canonicaljson \
                python3-aiohttp python3-asyncpg python3-markdown python3-bleach \
                python3-dnslib bind9-dnsutils wrk curl openssl postgresql

.PHONY: all module tool deps node-deps test demo demo-stop bench clean

all: module tool

module: $(BUILD)/ngx_http_matrix_module.so
tool: $(BUILD)/matrix-tool

# The module is built inside a private copy of the nginx tree, configured
# with the same flags as the nginx that will load it (Debian's conf_flags
# when present), so that its binary signature matches.  The stamp holds
# the tree's path, so that another NGINX_SRC reconfigures.
NGX_SRC_STAMP := $(BUILD)/.nginx-src
$(shell mkdir -p $(BUILD); [ "$$(cat $(NGX_SRC_STAMP) 2>/dev/null)" = "$(NGINX_SRC)" ] \
    || echo "$(NGINX_SRC)" > $(NGX_SRC_STAMP))

# configure compiles sql/ into the module: a new migration reconfigures
$(NGX_BUILD)/.configured: $(NGINX_SRC)/configure config t/pgtest/config \
        $(NGX_SRC_STAMP) \
        src/gen-migrations.sh $(SQL_FILES)
	@test -d $(NGINX_SRC)/auto || { echo "no nginx source at $(NGINX_SRC): run 'make deps' or set NGINX_SRC" >&2; exit 1; }
	rm -rf $(NGX_BUILD) && mkdir -p $(NGX_BUILD)
	cp -a $(NGINX_SRC)/. $(NGX_BUILD)/
	cd $(NGX_BUILD) && if [ -f conf_flags ]; then \
	    . ./conf_flags && ./configure "$${NGX_CONF_FLAGS[@]}" \
	        --add-dynamic-module=$(CURDIR) \
	        --add-dynamic-module=$(CURDIR)/t/pgtest; \
	else \
	    ./configure --with-compat --with-http_ssl_module \
	        --add-dynamic-module=$(CURDIR) \
	        --add-dynamic-module=$(CURDIR)/t/pgtest; \
	fi >configure.log 2>&1 || { tail -20 configure.log; exit 1; }
	touch $@

# the test-only module (t/pgtest) comes along; it is never installed
$(BUILD)/ngx_http_matrix_module.so: $(NGX_BUILD)/.configured $(MODULE_SRCS) \
        $(wildcard t/pgtest/*.c)
	$(MAKE) -C $(NGX_BUILD) -f objs/Makefile modules
	@# a new file, not the old one rewritten: a running nginx has it mapped
	cp $(NGX_BUILD)/objs/ngx_http_matrix_module.so $@.tmp && mv $@.tmp $@
	cp $(NGX_BUILD)/objs/ngx_http_matrix_pgtest_module.so $(BUILD)/pgtest.tmp \
	    && mv $(BUILD)/pgtest.tmp $(BUILD)/ngx_http_matrix_pgtest_module.so

$(BUILD)/core/%.o: src/core/%.c $(CORE_HDRS)
	@mkdir -p $(dir $@)
	$(CC) $(MX_CFLAGS) -c -o $@ $<

$(BUILD)/gen/matrix_migrations.h: src/gen-migrations.sh $(SQL_FILES)
	@mkdir -p $(dir $@)
	sh src/gen-migrations.sh $@ $(SQL_FILES)

$(BUILD)/matrix-tool: src/tool/matrix-tool.c $(CORE_OBJS) \
        $(BUILD)/gen/matrix_migrations.h
	$(CC) $(MX_CFLAGS) -I$(BUILD)/gen -I$(PQ_INCDIR) -o $@ $< $(CORE_OBJS) \
	    $(MX_LIBS) -lpq

# one TAP program per t/core/test_<part>.c, run by t/core-<part>.t
CORE_TESTS  := $(patsubst t/core/%.c,$(BUILD)/%,$(wildcard t/core/test_*.c))

$(BUILD)/test_%: t/core/test_%.c t/core/tap.h $(CORE_OBJS)
	$(CC) $(MX_CFLAGS) -It/core -o $@ $< $(CORE_OBJS) $(MX_LIBS)

deps:
	@missing=$$(for p in $(DEB_PACKAGES); do \
	    dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q '^install ok installed' || echo $$p; \
	done); \
	if ! command -v node >/dev/null || ! command -v npm >/dev/null; then \
	    missing="$$missing $(NODE_DEB_PACKAGES)"; \
	fi; \
	if [ -n "$${missing// /}" ]; then \
	    echo "installing:" $$missing; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi

# node and npm: Debian's, unless the machine has a node of its own
# (NodeSource's "nodejs" provides npm and conflicts with Debian's npm)
NODE_DEB_PACKAGES := nodejs npm
NODE_DIR    := $(BUILD)/node

# the npm packages of the test tools (ajv for t/tools/spec_validate.js),
# exactly as locked, into build/node; again when the lock changes
$(NODE_DIR)/.installed: t/tools/package.json t/tools/package-lock.json
	@mkdir -p $(NODE_DIR)
	cp t/tools/package.json t/tools/package-lock.json $(NODE_DIR)/
	npm ci --prefix $(NODE_DIR) --no-audit --no-fund --loglevel=error
	touch $@

node-deps: $(NODE_DIR)/.installed

test: deps all $(CORE_TESTS) node-deps
	MX_VECTORS=$(SPEC)/vectors.json \
	MX_SPEC_DIR=$(SPEC) \
	MATRIX_BUILD_DIR=$(CURDIR)/$(BUILD) \
	TEST_NGINX_BINARY=$${TEST_NGINX_BINARY:-/usr/sbin/nginx} \
	TEST_NGINX_LOAD_MODULES=$(CURDIR)/$(BUILD)/ngx_http_matrix_module.so \
	MATRIX_TOOL=$(CURDIR)/$(BUILD)/matrix-tool \
	MATRIX_PGTEST_MODULE=$(CURDIR)/$(BUILD)/ngx_http_matrix_pgtest_module.so \
	prove -I t/runner -I t/lib -r t/

demo: deps all
	bash examples/demo.sh

demo-stop:
	bash examples/demo.sh stop

bench: deps all
	@# every benchmark runs; those that missed a target or failed are named
	@failed=; for b in bench/*/run.sh; do echo "== $$b"; sh $$b || failed="$$failed $$b"; done; \
	if [ -n "$$failed" ]; then echo "== missed or failed:$$failed"; exit 1; fi

clean:
	rm -rf $(BUILD)
