// The same API suite on SQLite and on PostgreSQL (fresh schema per run).
import { apiSuite } from './api-suite.js';
import { backends } from './harness.js';

for (const b of backends()) apiSuite(b);
