"""Coverage-guided fuzz targets for aiomemif's sans-IO core (atheris / libFuzzer).

``fuzz_control`` (the handshake machines), ``fuzz_receive`` (both roles' receivers) and
``fuzz_server_tx`` (the server's transmitter) each define ``one_input(data)``, which the
fuzzer calls and the test suite replays; ``harness`` holds what they share and ``run``
runs them (see the README's "Fuzzing" section).
"""
