/**
 * The edgefleet release version, in a module that imports nothing, so `edgefleet --version`
 * prints it without loading the agent or the hub (issue #12). It equals package.json's
 * `version`, and the agent reports it in hello (test/integration/cli-lazy.test.ts checks both).
 */
export const EDGEFLEET_VERSION = '0.1.0';
