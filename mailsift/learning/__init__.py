"""Learning: the training log, how each process replays it into models, and the rules
for who may teach what (sources and precedence, personal layers, consensus, outbound).

``trainlog`` is the one durable, ordered log; ``learner`` turns it into this process's
models; ``personal`` is each user's own layer; ``consensus`` decides when users' reports
reach the shared model; ``outbound`` guards learning ham from outbound mail.
"""
