"""The offline half of tokenpace: a SimPy model of a serving node, a TCP path per stream and
the people reading, run once per pacing controller on the same scenario."""
