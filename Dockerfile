# syntax=docker/dockerfile:1
# Build stage: compile TypeScript.
FROM node:20-bookworm-slim AS build
WORKDIR /app
COPY package.json package-lock.json ./
# npm ci's postinstall applies patches/ to Aedes (PUBACK after store, ...: docs/SECURITY.md)
COPY patches ./patches
RUN npm ci --no-audit --no-fund
COPY tsconfig.json tsconfig.build.json ./
COPY types ./types
COPY bin ./bin
COPY broker ./broker
COPY plugins ./plugins
COPY pki ./pki
COPY bench ./bench
COPY certs-dev/generate.ts ./certs-dev/generate.ts
RUN npm run build && npm prune --omit=dev

# Runtime stage: no compilers, no dev key material, non-root.
FROM node:20-bookworm-slim
ENV NODE_ENV=production \
    CERTS_DIR=/etc/aedes-jitp/certs \
    GENERATE_DEV_CERTS=false \
    SCHEMAS_DIR=/app/schemas \
    TEMPLATES_DIR=/app/templates
WORKDIR /app
COPY --from=build /app/node_modules ./node_modules
COPY --from=build /app/dist ./dist
COPY package.json ./
COPY schemas ./schemas
COPY templates ./templates
RUN useradd --system --uid 10001 --home /app jitp && mkdir -p /etc/aedes-jitp/certs && chown jitp /etc/aedes-jitp/certs
USER jitp
EXPOSE 8883 9100 9443
# mount the PKI at /etc/aedes-jitp/certs (server.pem/key, device-ca.pem/key, claim-ca.pem, service-ca.pem, manufacturer-ca.pem)
HEALTHCHECK --interval=15s --timeout=3s --start-period=10s \
  CMD node -e "fetch('http://127.0.0.1:'+(process.env.HTTP_PORT||9100)+'/healthz').then(r=>process.exit(r.ok?0:1),()=>process.exit(1))"
ENTRYPOINT ["node", "dist/bin/aedes-jitp.js"]
CMD ["start"]
