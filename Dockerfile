# docsach: one image for the bot, its workers and the command-line tools.
#   docker build -t docsach .
#   docker compose up -d            (see compose.yaml and README "Install for a province")
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    DOCSACH_DATABASE_URL=sqlite+aiosqlite:////data/docsach.db \
    DOCSACH_FILES_DIR=/data/files \
    DOCSACH_LISTEN=0.0.0.0:8080

# postgresql-client: pg_dump/pg_restore for `docsach backup` (bookworm ships 15, like compose's server).
RUN apt-get update \
 && apt-get install -y --no-install-recommends postgresql-client \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /data --shell /usr/sbin/nologin docsach \
 && mkdir -p /data/files && chown -R docsach:docsach /data

WORKDIR /app
# Dependencies first (a code change does not reinstall them), then the code.
COPY pyproject.toml README.md LICENSE ./
COPY bot/__init__.py bot/__init__.py
COPY handlers/__init__.py handlers/__init__.py
COPY services/__init__.py services/__init__.py
RUN pip install --editable . && pip uninstall --yes docsach
COPY alembic.ini ./
COPY alembic alembic
COPY bot bot
COPY handlers handlers
COPY services services
COPY locales locales
# Editable: migrations and locales are read next to the code in /app. Compile the catalogs.
RUN pip install --no-deps --editable . \
 && for po in locales/*/LC_MESSAGES/*.po; do pybabel compile --statistics -i "$po" -o "${po%.po}.mo" || exit 1; done \
 && python -c "from handlers.i18n import Catalogs; assert Catalogs().messages['vi']"

USER docsach
WORKDIR /data
VOLUME ["/data"]
EXPOSE 8080
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
  CMD python -c "import os, urllib.request; port = os.environ.get('DOCSACH_LISTEN', '0.0.0.0:8080').rpartition(':')[2]; urllib.request.urlopen(f'http://127.0.0.1:{port}/healthz', timeout=4)"
STOPSIGNAL SIGTERM
CMD ["docsach", "run", "--no-demo"]
