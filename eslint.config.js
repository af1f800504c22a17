// Lint: type-aware rules that catch floating promises, and a hard wall between agent/ and hub/
// (ARCHITECTURE: both import shared/, never each other; shared/ imports neither).
import js from '@eslint/js';
import tseslint from 'typescript-eslint';

const noImport = (dirs) => ({
  'no-restricted-imports': [
    'error',
    {
      patterns: dirs.map((d) => ({
        group: [`**/${d}/*`, `**/${d}`],
        message: `agent/, hub/ and shared/ must not import ${d}/ (see ARCHITECTURE.md).`,
      })),
    },
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
  { files: ['agent/**/*.ts'], rules: noImport(['hub', 'cli']) },
  { files: ['hub/**/*.ts'], rules: noImport(['agent', 'cli']) },
  { files: ['shared/**/*.ts'], rules: noImport(['agent', 'hub', 'cli']) },
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
