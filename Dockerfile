# bridge's processes (relay, consumers, sinks): `docker compose up` builds this image.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app
RUN useradd --system --create-home bridge

COPY pyproject.toml README.md ./
COPY bridge ./bridge
COPY contracts ./contracts
COPY topics ./topics
COPY examples ./examples
# Editable, so the shipped contracts/ and topics/ beside the package are found in /app.
RUN pip install -e . && python -c "import bridge.cli"

USER bridge
ENTRYPOINT []
CMD ["bridge", "--help"]
