"""A Ray program, unchanged but for its import: tasks, actors and objects on anyray's default backend."""

import numpy as np

import anyray as ray


@ray.remote
def square(x):
    return x * x


@ray.remote
def total(values):
    return sum(values)


@ray.remote
class Counter:
    def __init__(self, start=0):
        self.n = start

    def incr(self, k=1):
        self.n += k
        return self.n


def main():
    ctx = ray.init()
    print(f"backend: {ctx.backend}")

    squares = [square.remote(i) for i in range(10)]
    print("sum of squares 0..9:", ray.get(total.remote(ray.get(squares))))

    counter = Counter.remote(100)
    print("counter:", ray.get([counter.incr.remote() for _ in range(3)]))

    matrix = ray.put(np.arange(1_000_000, dtype=np.float64).reshape(1000, 1000))
    print("trace of the stored matrix:", ray.get(ray.remote(np.trace).remote(matrix)))

    ready, pending = ray.wait([square.remote(i) for i in range(4)], num_returns=2)
    print(f"wait: {len(ready)} ready, {len(pending)} pending")

    try:
        ray.get(ray.remote(lambda: int("not a number")).remote())
    except ValueError as exc:
        print("a remote ValueError is caught as ValueError:", type(exc).__name__)

    ray.shutdown()


if __name__ == "__main__":
    main()
