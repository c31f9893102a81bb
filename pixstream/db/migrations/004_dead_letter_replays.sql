-- Dead letters already re-driven by `pixstream dlq replay`: replaying twice does nothing twice.
CREATE TABLE dead_letter_replays (
    dlq_topic    text NOT NULL,
    partition    integer NOT NULL,
    "offset"     bigint NOT NULL,
    target_topic text NOT NULL,
    replayed_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (dlq_topic, partition, "offset")
);
