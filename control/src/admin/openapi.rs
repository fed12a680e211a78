//! The admin API's own OpenAPI 3.0 description, served at `/v1/openapi.json`.

use serde_json::{Value, json};

pub fn document() -> Value {
    let error = json!({"$ref": "#/components/responses/Error"});
    let secured = json!([{"bearer": []}]);
    let ok = |description: &str| json!({"description": description, "content": {"application/json": {"schema": {"type": "object"}}}});
    let revision_header = json!({"name": "If-Match", "in": "header", "required": false,
        "description": "Optimistic concurrency: the revision the object must be at (0: must not exist yet). A mismatch is 409.",
        "schema": {"type": "integer"}});
    let consistency = json!({"name": "consistency", "in": "query", "required": false,
        "description": "Reads are linearizable (answered by or through the leader) unless this is `stale`.",
        "schema": {"type": "string", "enum": ["linearizable", "stale"]}});
    let id = |name: &str| json!({"name": name, "in": "path", "required": true, "schema": {"type": "string"}});
    json!({
        "openapi": "3.0.3",
        "info": {
            "title": "Portico admin API",
            "version": "1",
            "description": "Manage the APIs, stages, deployments and tokens of a Portico cluster. Any control node answers; writes go to the leader. Errors are {\"error\": {\"type\", \"message\", \"fields\": [{\"path\", \"message\"}]}}. With no quorum the answer is 503 with Retry-After."
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "description": "A token `ptk_...`; role admin writes, role viewer reads."}},
            "responses": {"Error": {"description": "An error naming what is wrong", "content": {"application/json": {"schema": {
                "type": "object", "properties": {"error": {"type": "object", "properties": {
                    "type": {"type": "string"}, "message": {"type": "string"},
                    "fields": {"type": "array", "items": {"type": "object", "properties": {"path": {"type": "string"}, "message": {"type": "string"}}}}}}}}}}}},
            "schemas": {
                "Api": {"type": "object", "description": "See docs/configuration.md: id, name, description, kind (http|rest), routes, gateway_responses, stages.",
                    "required": ["id", "kind"], "properties": {"id": {"type": "string"}, "kind": {"type": "string", "enum": ["http", "rest"]}}},
                "Document": {"type": "object", "description": "A declarative file: apis and deployments.",
                    "properties": {"apis": {"type": "array", "items": {"$ref": "#/components/schemas/Api"}}, "deployments": {"type": "array", "items": {"type": "object"}}}}
            }
        },
        "security": secured,
        "paths": {
            "/v1/openapi.json": {"get": {"summary": "This document", "security": [], "responses": {"200": ok("OpenAPI document")}}},
            "/v1/apis": {"get": {"summary": "List APIs", "parameters": [consistency], "responses": {"200": ok("APIs with their revisions"), "401": error, "503": error}}},
            "/v1/apis/{id}": {
                "parameters": [id("id")],
                "get": {"summary": "Get an API", "parameters": [consistency], "responses": {"200": ok("The API"), "404": error}},
                "put": {"summary": "Create or replace an API", "parameters": [revision_header],
                    "requestBody": {"required": true, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Api"}}, "application/yaml": {"schema": {"$ref": "#/components/schemas/Api"}}}},
                    "responses": {"200": ok("The stored API"), "400": error, "401": error, "403": error, "409": error, "503": error}},
                "delete": {"summary": "Delete an API and its deployments", "parameters": [revision_header], "responses": {"200": ok("Deleted"), "404": error, "409": error}}
            },
            "/v1/apis/{id}/deployments": {
                "parameters": [id("id")],
                "get": {"summary": "List an API's deployments", "responses": {"200": ok("Deployments"), "404": error}},
                "post": {"summary": "Deploy: freeze the API's current definition, optionally pointing a stage at it",
                    "requestBody": {"content": {"application/json": {"schema": {"type": "object", "properties": {"description": {"type": "string"}, "stage": {"type": "string"}}}}}},
                    "responses": {"200": ok("The deployment"), "404": error, "400": error}}
            },
            "/v1/apply": {"post": {"summary": "Apply a declarative document (idempotent); ?dry_run=true returns the plan only",
                "parameters": [{"name": "dry_run", "in": "query", "schema": {"type": "boolean"}}],
                "requestBody": {"required": true, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Document"}}, "application/yaml": {"schema": {"$ref": "#/components/schemas/Document"}}}},
                "responses": {"200": ok("The changes, each with action create|update|unchanged and before/after"), "400": error, "503": error}}},
            "/v1/tokens": {
                "get": {"summary": "List tokens (admin)", "responses": {"200": ok("Tokens without secrets")}},
                "post": {"summary": "Create a token; the secret is returned once",
                    "requestBody": {"required": true, "content": {"application/json": {"schema": {"type": "object", "required": ["name", "role"], "properties": {"name": {"type": "string"}, "role": {"type": "string", "enum": ["admin", "viewer", "join", "edge"]}}}}}},
                    "responses": {"200": ok("The token; for role edge also `join_token` (the token and the cluster CA's SHA-256), which `portico edge --join-token` takes"), "400": error}}
            },
            "/v1/tokens/{id}": {"parameters": [id("id")], "delete": {"summary": "Revoke a token", "responses": {"200": ok("Revoked"), "404": error}}},
            "/v1/cluster/status": {"get": {"summary": "Members, leader, term, commit and applied index, lag per member", "responses": {"200": ok("Cluster status")}}},
            "/v1/cluster/edges": {"get": {"summary": "Every enrolled edge with its sync status (status connected|disconnected|unknown|revoked, revision, lag, last_seen_ms, software_version, node), merged from every member's sessions",
                "parameters": [consistency, {"name": "scope", "in": "query", "required": false, "description": "`local`: only the sessions this node serves", "schema": {"type": "string", "enum": ["local"]}}],
                "responses": {"200": ok("{revision, items, unreachable_nodes}")}}},
            "/v1/cluster/edges/{id}": {"parameters": [id("id")], "delete": {"summary": "Revoke an edge: every control node refuses its connections from then on", "responses": {"200": ok("Revoked"), "404": error}}},
            "/metrics": {"get": {"summary": "Prometheus metrics of this node (no token needed)", "security": [], "responses": {"200": {"description": "Prometheus text"}}}}
        }
    })
}
