/**
 * The one seeded pseudo-random generator of the demo, the crash tests and the
 * benchmarks: xorshift32. The same seed gives the same choices, so a run can be replayed
 * from the seed it printed (the timing is the machine's). Exact in 32-bit integer
 * arithmetic: no float product that passes 2^53 and loses bits.
 *
 * @internal
 * @module
 */

/** xorshift32 over a seed; a seed of 0 (or one that is 0 mod 2^32) starts from 1. */
export class Prng {
  private state: number

  constructor(seed: number) {
    this.state = seed >>> 0 || 1
  }

  /** The next 32-bit value, as an unsigned integer (never 0). */
  next(): number {
    let x = this.state
    x ^= x << 13
    x ^= x >>> 17
    x ^= x << 5
    this.state = x >>> 0
    return this.state
  }

  /** Uniform in [0, 1). */
  random(): number {
    return this.next() / 2 ** 32
  }

  /** A whole number in [0, n). */
  below(n: number): number {
    return Math.floor(this.random() * n)
  }

  /** One element of `xs`. */
  pick<T>(xs: readonly T[]): T {
    return xs[this.below(xs.length)]
  }
}
