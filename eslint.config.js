// Lint: type-aware rules that catch floating promises, and hard walls between the trees
// (ARCHITECTURE: agent/ and hub/ import shared/, never each other; shared/ imports neither; the
// shipped trees, cli/ included, never import scripts/ or test/, which are not shipped: issue #12).
import js from '@eslint/js';
import tseslint from 'typescript-eslint';

const NOT_SHIPPED = ['scripts', 'test'];
const wallMessage = (tree, d) =>
  NOT_SHIPPED.includes(d)
    ? `${tree}/ is shipped and must not import ${d}/ (not shipped): move what it needs into shared/ or ${tree}/.`
    : `${tree}/ must not import ${d}/ (see ARCHITECTURE.md).`;
// Static imports and exports through no-restricted-imports; dynamic import() (the CLI loads its
// commands that way) through a selector on the literal specifier.
const noImport = (tree, dirs) => ({
  'no-restricted-imports': ['error', { patterns: dirs.map((d) => ({ group: [`**/${d}/*`, `**/${d}`], message: wallMessage(tree, d) })) }],
  'no-restricted-syntax': [
    'error',
    ...dirs.map((d) => ({ selector: `ImportExpression[source.value=/(^|\\/)${d}(\\/|$)/]`, message: wallMessage(tree, d) })),
  ],
});

export default tseslint.config(
  { ignores: ['dist/**', 'node_modules/**', 'models/**', '.data/**', 'test-artifacts/**'] },
  js.configs.recommended,
  ...tseslint.configs.recommendedTypeChecked,
  {
    languageOptions: {
      parserOptions: { projectService: true, tsconfigRootDir: import.meta.dirname },
    },
    rules: {
      '@typescript-eslint/no-floating-promises': 'error',
      '@typescript-eslint/no-misused-promises': 'error',
      '@typescript-eslint/no-explicit-any': 'error',
      '@typescript-eslint/no-unused-vars': ['error', { argsIgnorePattern: '^_', varsIgnorePattern: '^_' }],
      '@typescript-eslint/restrict-template-expressions': ['error', { allowNumber: true, allowBoolean: true }],
    },
  },
  { files: ['agent/**/*.ts'], rules: noImport('agent', ['hub', 'cli', ...NOT_SHIPPED]) },
  { files: ['hub/**/*.ts'], rules: noImport('hub', ['agent', 'cli', ...NOT_SHIPPED]) },
  { files: ['shared/**/*.ts'], rules: noImport('shared', ['agent', 'hub', 'cli', ...NOT_SHIPPED]) },
  { files: ['cli/**/*.ts'], rules: noImport('cli', NOT_SHIPPED) },
  {
    files: ['test/**/*.ts', 'scripts/**/*.ts'],
    rules: {
      '@typescript-eslint/no-unsafe-assignment': 'off',
      '@typescript-eslint/no-unsafe-member-access': 'off',
      // node:test's describe/it return promises the runner itself awaits.
      '@typescript-eslint/no-floating-promises': [
        'error',
        { allowForKnownSafeCalls: [{ from: 'package', package: 'node:test', name: ['describe', 'it', 'test', 'suite'] }] },
      ],
    },
  },
  { files: ['**/*.js', '**/*.mjs'], ...tseslint.configs.disableTypeChecked },
  { files: ['**/*.js', '**/*.mjs'], languageOptions: { globals: { URL: 'readonly', process: 'readonly', console: 'readonly' } } },
);
