"""Events, triggers and durable coordinators (Triggerflow), kept by the db.

``events.py``: the CloudEvents fum stores (call ends and clients' own); ``triggers.py``:
a trigger's activation, condition and action; ``engine.py``: runs each stored event
through the triggers it activates, in the db transaction that stores it;
``coordinators.py``: executions of durable coordinator functions, their history, and
how a coordinator waits and resumes.
"""
