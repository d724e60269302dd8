# The worker: the project in /opt/weekly-recs with its virtualenv, and cron firing deploy/crontab.
FROM python:3.11-slim
RUN apt-get update && apt-get install -y --no-install-recommends cron make && rm -rf /var/lib/apt/lists/*
WORKDIR /opt/weekly-recs
COPY pyproject.toml Makefile ./
COPY pipeline ./pipeline
RUN python -m venv .venv && .venv/bin/pip install --no-cache-dir -e . && touch .venv/bin/.installed
COPY luigi.cfg ./
COPY deploy ./deploy
# cron starts jobs with an empty environment: hand it the container's (secrets come from .env via compose).
# Debian's cron runs @reboot jobs only without /var/run/crond.reboot, which a restarted container keeps.
CMD ["sh", "-c", "printenv | grep -E '^(LUIGI_CONFIG_PATH|PGPASSWORD|TELEGRAM_BOT_TOKEN|TELEGRAM_CHAT_ID|HEARTBEAT_URL)=' > /etc/environment; rm -f /var/run/crond.reboot; crontab deploy/crontab && exec cron -f"]
