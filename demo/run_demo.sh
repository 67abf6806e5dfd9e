#!/usr/bin/env bash
# The main job end to end on the embedded emoji collection:
# fetch -> extract vectors -> thumbnails -> per-period Annoy indices -> the collection map -> a query
# -> the web app.
# Every step is resumable: run it again after an interruption and it continues.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${1:-data/demo}
PY=${PYTHON:-.venv/bin/python}

$PY demo/fetch_emoji.py "$DATA"
$PY extract_vectors.py "$DATA/metadata.csv" "$DATA/vectors"
$PY make_thumbnails.py "$DATA/metadata.csv" "$DATA/thumbnails"
$PY annoy_indexer.py build "$DATA/vectors" "$DATA/indices-eucl" --steps 10 1
$PY make_map.py "$DATA/vectors" "$DATA/indices-eucl" --thumbnails "$DATA/thumbnails"
echo "Neighbours of the Google drawing of 'Grinning Face' (emoji:google:1f600), per decade:"
$PY annoy_indexer.py query "$DATA/vectors" "$DATA/indices-eucl" emoji:google:1f600 --nns 3 --step 10 \
  --format table
PORT=${PORT:-8080}
HOST=${HOST:-127.0.0.1}
echo "Serving the search page at http://$HOST:$PORT/?urn=emoji:google:1f600 and the collection map at"
echo "http://$HOST:$PORT/map (Ctrl-C stops it)"
exec $PY app.py --vector-dir "$DATA/vectors" --index-dir "$DATA/indices-eucl" \
  --thumbnails "$DATA/thumbnails" --host "$HOST" --port "$PORT" --preload-model
