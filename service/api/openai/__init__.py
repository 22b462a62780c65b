"""OpenAI-compatible ``/v1`` API: the same generation path as ``/generate``, in OpenAI's wire format."""
