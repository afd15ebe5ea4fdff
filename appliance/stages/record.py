"""Record: writes predictions, alerts, model events and drift events to DuckDB (their
only writer)."""

from __future__ import annotations

import queue

import duckdb

from appliance.messages import Alerts, DriftEvents, ModelEvent, Predictions
from appliance.stages.base import Stage
from appliance.storage import tables


class RecordStage(Stage):
    name = "record"
    essential = False  # losing the history of predictions does not stop alerting

    def __init__(self, db: duckdb.DuckDBPyConnection, inbox: queue.Queue) -> None:
        super().__init__(inbox)
        self.db = db
        self._con: duckdb.DuckDBPyConnection | None = None

    def start(self) -> None:
        self._con = self.db.cursor()

    def handle(self, item: object) -> None:
        con = self._con
        assert con is not None
        if isinstance(item, Predictions):
            tables.insert_predictions(con, list(item.items))
            self.counters.processed += len(item.items)
        elif isinstance(item, Alerts):
            tables.insert_alerts(con, list(item.items))
        elif isinstance(item, ModelEvent):
            tables.insert_model_event(con, item)
        elif isinstance(item, DriftEvents):
            tables.insert_drift_events(con, list(item.items))

    def close(self) -> None:
        con, self._con = self._con, None
        if con is not None:
            con.close()
