"""What runs work: the worker (exports and their partitions), the scheduler, stream runners, retention."""
