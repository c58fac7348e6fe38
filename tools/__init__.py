"""Command-line tools around the worker: mock producer, results viewer, replay and record
files, demo, soak run, the embedded broker and the worker launcher. They use worker/ and
phoenix/ (and training/ for the synthetic world); nothing in worker/ imports them."""
