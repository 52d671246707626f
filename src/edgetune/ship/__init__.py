"""What leaves the pipeline: the phone bundle (export), the bundle checked on an arm64 build
(phone-check), and a conversation with any model (chat)."""
