/**
 * The NBD (network block device) wire protocol, one concept per file: the numbers
 * (`constants`), the errors and their mapping to error values (`errors`), the
 * handshake and transmission codecs (`handshake`, `transmission`, over the helpers in
 * `wire`), the incremental parsers of the transmission phase (`parsers`, over
 * `byte-queue`), NBD URLs (`url`) and the chunks of structured replies
 * (`structured-reply`). Pure functions over bytes, with no socket in
 * sight: every decoder either returns a value or throws an {@link NbdError}, whatever
 * the bytes.
 *
 * @internal
 * @module
 */
export * from './constants'
export * from './errors'
export * from './wire'
export * from './handshake'
export * from './transmission'
export * from './byte-queue'
export * from './parsers'
export * from './url'
export * from './structured-reply'
