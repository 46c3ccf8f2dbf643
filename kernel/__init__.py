"""The shared kernel: what every hub process uses.

settings, database and migrations, outbox, Kafka (broker launcher, envelope
codec, producer and consumer), telemetry, Problem JSON errors, auth.
Services and the gateway depend on the kernel and on ``contracts``, never on
each other.
"""
