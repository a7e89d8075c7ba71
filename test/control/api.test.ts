// The same API suite on SQLite and on PostgreSQL (fresh schema per run).
import { apiSuite } from './api-suite.js';
import { freshPgSchema, pgUnavailable, type PgSchema } from './harness.js';

apiSuite({ name: 'SQLite', setup: async () => 'sqlite', teardown: async () => {} });

let schema: PgSchema | null = null;
apiSuite({
  name: 'PostgreSQL',
  async setup() {
    const why = await pgUnavailable();
    if (why) return `skip:${why}`;
    schema = await freshPgSchema();
    return schema.url;
  },
  async teardown() {
    await schema?.drop();
  },
});
