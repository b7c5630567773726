# Developer shortcuts; the README's Quick start uses tools/ directly.
.PHONY: test unit deb install demo check lint clean

test:            ## the whole suite (as root: e2e and package tests need it)
	tools/test

unit:            ## unit, filter and lint tests only (no root needed)
	tools/setup-env
	.venv/bin/python -m pytest tests/unit tests/fail2ban tests/test_lint.py

deb:             ## dist/portsentry-sensor_<version>_all.deb
	tools/build-deb

install:         ## build the package and install it with apt
	tools/install

demo:            ## the whole story in throw-away network namespaces, narrated
	tools/demo

check:           ## validate the shipped configuration and print its port plan
	python3 -m sensor check --config etc/portsentry.conf --defaults /dev/null

lint:
	.venv/bin/ruff check sensor tests bench
	.venv/bin/mypy --config-file setup.cfg

clean:
	rm -rf dist build .pytest_cache .mypy_cache .ruff_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
