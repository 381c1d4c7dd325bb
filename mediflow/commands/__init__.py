"""One module per `mediflow` sub-command. Each exposes `add_parser(subparsers)` and `run(args) -> int`."""

# Order is the order `mediflow --help` lists them.
COMMAND_MODULES = [
    "train",
    "ensemble",
    "calibrate",
    "evaluate",
    "predict",
    "analyze",
    "serve",
    "db",
    "audit",
    "keys",
    "feedback",
    "export",
    "fit_input_check",
    "federated",
    "dicom_node",
]
