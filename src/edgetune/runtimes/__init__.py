"""The runtimes a phone app links to run the model. measure and ship call a runtime, never a
runtime's library directly."""
