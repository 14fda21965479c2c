# bridge's processes (relay, consumers, sinks): `docker compose up` builds this image.
# The image runs the built wheel, exactly what `pip install bridge` gives a user (its contracts and
# topic catalog travel inside the package), never an editable tree.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY bridge ./bridge
COPY contracts ./contracts
COPY topics ./topics
RUN pip install --no-cache-dir build && python -m build --wheel --outdir /dist

FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
# A fixed numeric user, so Kubernetes can verify runAsNonRoot (deploy/kubernetes runs as 10001).
RUN useradd --system --create-home --uid 10001 bridge
COPY --from=build /dist/*.whl /tmp/
RUN pip install /tmp/bridge-*.whl && rm /tmp/bridge-*.whl && bridge contracts check
# The compose file's example consumer; your own applications go where `bridge consume` runs.
WORKDIR /app
COPY examples ./examples
USER 10001
ENTRYPOINT []
CMD ["bridge", "--help"]
