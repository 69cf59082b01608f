/**
 * JSON Schemas shared by the admin API's routes (CONTRACT §8). Each route
 * declares its input and output with these; Fastify compiles them once at
 * start-up, and @fastify/swagger turns the same objects into /openapi.json, so
 * the document cannot drift from what the server enforces.
 */

/** every refusal, from the one error catalogue (broker/errors.ts) */
export const errorSchema = {
  $id: 'Error',
  type: 'object',
  required: ['statusCode', 'errorCode', 'errorMessage'],
  properties: {
    statusCode: { type: 'integer' },
    errorCode: { type: 'string', description: 'a code of the error catalogue' },
    errorMessage: { type: 'string' }
  }
} as const

const errorRef = { $ref: 'Error#' } as const
/** the error answers every route can give; a route adds its own 404/409 */
export const errorResponses = { 400: errorRef, 403: errorRef, 503: errorRef } as const
export const notFound = { 404: errorRef } as const
export const conflict = { 409: errorRef } as const

/** a device id is one topic level (plugins/provisioning/templates.ts DEVICE_ID) */
export const deviceIdParam = {
  type: 'object',
  required: ['id'],
  additionalProperties: false,
  properties: { id: { type: 'string', pattern: '^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$' } }
} as const

/** routes that take no query parameters refuse unknown ones, like every other unknown input */
export const noQuery = { type: 'object', additionalProperties: false, properties: {} } as const

export const HEX_256 = '^(?:[0-9a-fA-F]{2}:?){31}[0-9a-fA-F]{2}$'

export const pageQuery = {
  limit: { type: 'integer', minimum: 1, maximum: 1000, default: 100 },
  cursor: { type: 'string', minLength: 1, maxLength: 512, description: 'nextCursor of the previous page' }
} as const

export function pageOf (item: object): object {
  return {
    type: 'object',
    required: ['items', 'nextCursor'],
    properties: {
      items: { type: 'array', items: item },
      nextCursor: { type: ['string', 'null'], description: 'null on the last page' }
    }
  }
}

/** CONTRACT §3.7: provisioned (in its health window) → active | quarantined; revoked */
export const deviceStatus = { type: 'string', enum: ['provisioned', 'active', 'quarantined', 'revoked'] } as const

export const deviceSummary = {
  type: 'object',
  required: ['deviceId', 'status', 'template', 'createdAt', 'updatedAt'],
  properties: {
    deviceId: { type: 'string' },
    status: deviceStatus,
    template: { type: 'string' },
    createdAt: { type: 'integer', description: 'ms since the epoch' },
    updatedAt: { type: 'integer' }
  }
} as const

export const certificateItem = {
  type: 'object',
  required: ['certificateId', 'deviceId', 'status', 'notAfter'],
  properties: {
    certificateId: { type: 'string' },
    deviceId: { type: ['string', 'null'] },
    role: { type: 'string' },
    status: { type: 'string', enum: ['pending', 'active', 'revoked'] },
    serialNumber: { type: 'string' },
    notAfter: { type: 'integer' },
    createdAt: { type: 'integer' }
  }
} as const

const nullableInt = { type: ['integer', 'null'] } as const
const nullableString = { type: ['string', 'null'] } as const

export const activitySchema = {
  type: 'object',
  required: ['firstSeen', 'lastSeen', 'connects', 'messagesIn', 'rejected', 'lastErrorCode'],
  properties: {
    firstSeen: nullableInt,
    lastSeen: nullableInt,
    connects: { type: 'integer' },
    messagesIn: { type: 'integer' },
    rejected: { type: 'integer' },
    lastErrorCode: nullableString,
    remoteAddress: nullableString,
    certificateNotAfter: nullableInt
  }
} as const

export const deviceDetail = {
  type: 'object',
  required: ['deviceId', 'status', 'template', 'certificates', 'activity', 'config'],
  properties: {
    ...deviceSummary.properties,
    attributes: { type: 'object', additionalProperties: { type: 'string' } },
    certificates: { type: 'array', items: certificateItem },
    activity: activitySchema,
    config: {
      type: 'object',
      required: ['version', 'lastKnownGood'],
      properties: { version: nullableInt, lastKnownGood: nullableInt }
    },
    health: {
      type: ['object', 'null'],
      description: 'CONTRACT §3.7: the health window of a provisioned device (for a quarantined one: the window it failed); null once active',
      required: ['deadline', 'checks', 'met', 'missing'],
      properties: {
        deadline: { type: 'integer', description: 'ms since the epoch' },
        checks: { type: 'array', items: { type: 'string' } },
        met: { type: 'array', items: { type: 'string' } },
        missing: { type: 'array', items: { type: 'string' } }
      }
    }
  }
} as const
