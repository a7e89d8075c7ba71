// OpenAPI 3.1 document built from the routes as they are registered: each
// route's JSON schemas (params, querystring, body) become its parameters and
// request body, so the document cannot drift from what the server validates.
import type { FastifyInstance, RouteOptions } from 'fastify';

export interface RouteDoc {
  summary?: string;
  description?: string;
  tags?: string[];
  /** Documented 2xx response schema (not used for serialisation). */
  'x-response'?: Record<string, unknown>;
  /** Authentication: "operator", "apikey", "node", "none". */
  'x-auth'?: string;
}

type JsonSchema = Record<string, unknown>;

interface Operation {
  operationId: string;
  summary?: string;
  description?: string;
  tags?: string[];
  parameters?: unknown[];
  requestBody?: unknown;
  responses: Record<string, unknown>;
  security?: unknown[];
}

export class OpenApiCollector {
  private readonly paths: Record<string, Record<string, Operation>> = {};

  constructor(private readonly prefix: string) {}

  attach(app: FastifyInstance): void {
    app.addHook('onRoute', (r) => this.add(r));
  }

  private add(r: RouteOptions): void {
    if (!r.url.startsWith(this.prefix)) return;
    const schema = (r.schema ?? {}) as RouteDoc & { params?: JsonSchema; querystring?: JsonSchema; body?: JsonSchema };
    const methods = (Array.isArray(r.method) ? r.method : [r.method]).map((m) => m.toLowerCase()).filter((m) => m !== 'head');
    const path = r.url.replace(/:([A-Za-z0-9_]+)/g, '{$1}');
    for (const method of methods) {
      const parameters: unknown[] = [];
      const addParams = (s: JsonSchema | undefined, where: 'path' | 'query') => {
        const props = (s?.properties ?? {}) as Record<string, JsonSchema>;
        const required = new Set((s?.required as string[] | undefined) ?? []);
        for (const [name, ps] of Object.entries(props)) {
          const { description, ...rest } = ps;
          parameters.push({ name, in: where, required: where === 'path' || required.has(name), schema: rest, ...(description ? { description } : {}) });
        }
      };
      addParams(schema.params, 'path');
      addParams(schema.querystring, 'query');
      const op: Operation = {
        operationId: `${method}${path.replace(/[{}]/g, '').replace(/[^A-Za-z0-9]+(.)?/g, (_m, c: string | undefined) => (c ? c.toUpperCase() : ''))}`,
        ...(schema.summary ? { summary: schema.summary } : {}),
        ...(schema.description ? { description: schema.description } : {}),
        ...(schema.tags ? { tags: schema.tags } : {}),
        ...(parameters.length ? { parameters } : {}),
        responses: {
          '200': {
            description: 'Success',
            ...(schema['x-response'] ? { content: { 'application/json': { schema: schema['x-response'] } } } : {}),
          },
          default: { description: 'Error', content: { 'application/json': { schema: { $ref: '#/components/schemas/Error' } } } },
        },
      };
      if (schema.body) {
        op.requestBody = { required: true, content: { 'application/json': { schema: schema.body } } };
      }
      const auth = schema['x-auth'] ?? 'apikey';
      op.security = auth === 'none' ? [] : [{ bearer: [] }];
      (this.paths[path] ??= {})[method] = op;
    }
  }

  document(version: string): Record<string, unknown> {
    return {
      openapi: '3.1.0',
      info: {
        title: 'Larktun Admin API',
        version,
        description:
          'Multi-tenant control plane of the Larktun overlay network. Authenticate with `Authorization: Bearer KEY` ' +
          '(the operator key for /tenants management, a tenant API key otherwise). Errors are {"error":{"code","message","details"}}.',
      },
      servers: [{ url: '/' }],
      paths: this.paths,
      components: {
        securitySchemes: { bearer: { type: 'http', scheme: 'bearer' } },
        schemas: {
          Error: {
            type: 'object',
            required: ['error'],
            properties: {
              error: {
                type: 'object',
                required: ['code', 'message', 'details'],
                properties: { code: { type: 'string' }, message: { type: 'string' }, details: {} },
              },
            },
          },
        },
      },
    };
  }
}
