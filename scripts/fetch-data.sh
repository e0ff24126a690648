#!/usr/bin/env bash
# Placeholder until the data issue lands: fetches registry packages holding vlmix's data.
set -euo pipefail
