# Zapa's container image: `zapa serve` by default; the same image runs `zapa worker` and
# `zapa migrate` (see docker-compose.yml and the Procfile).

FROM python:3.11-slim-bookworm AS build

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src

# The dependencies get their own layer, rebuilt only when pyproject.toml changes.
COPY pyproject.toml ./
RUN python -c "import tomllib; print(*tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies'], sep='\n')" > requirements.txt \
    && pip install -r requirements.txt

COPY . .
RUN pip install --no-deps .


FROM python:3.11-slim-bookworm

RUN groupadd --gid 10001 zapa \
    && useradd --uid 10001 --gid 10001 --home-dir /app --no-create-home --shell /usr/sbin/nologin zapa \
    && install -d -o 10001 -g 10001 /app
COPY --from=build /opt/venv /opt/venv

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    LOG_FORMAT=json
# Writable by the app: the SQLite default keeps ./zapa.db here.
WORKDIR /app
USER 10001:10001

EXPOSE 8080
STOPSIGNAL SIGTERM
# The slim image has neither curl nor wget; the standard library is enough.
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:${PORT:-8080}/health', timeout=4)" || exit 1
CMD ["zapa", "serve"]
