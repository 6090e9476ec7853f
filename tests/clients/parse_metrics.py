"""Parses an OpenMetrics text on stdin with the official Prometheus Python client's strict
parser and prints every sample as JSON: [[name, {labels}, value], ...]. Exits non-zero on any
text the parser refuses."""

import json
import sys

from prometheus_client.openmetrics.parser import text_string_to_metric_families

samples = []
for family in text_string_to_metric_families(sys.stdin.read()):
    for s in family.samples:
        samples.append([s.name, s.labels, s.value])
print(json.dumps(samples))
