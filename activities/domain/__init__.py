"""The domain: pure types and rules of Tempered, no I/O. The lowest layer: everything may import
it, it imports nothing of Tempered's."""
