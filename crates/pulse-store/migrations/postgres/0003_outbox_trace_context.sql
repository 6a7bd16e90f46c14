-- The W3C trace context of the request that wrote an outbox row, so the relay's produce and the
-- consumers' spans join the same trace.
ALTER TABLE outbox_events ADD COLUMN traceparent TEXT;
ALTER TABLE outbox_events ADD COLUMN tracestate TEXT;
