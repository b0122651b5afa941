/**
 * The native layer: loading the addon ({@link binding}) and calling it ({@link native}).
 * Nothing outside `src/io/` and this folder talks to the addon.
 *
 * @internal
 * @module
 */
export { binding, platformTriple, type NativeBinding } from './load'
export { native } from './call'
