// Swagger UI over this server's own document. Everything it loads comes from this server: the
// online validator badge (validator.swagger.io) is off, and ?url=/?configUrl= are ignored, so a
// link cannot point the page at another document.
window.addEventListener("DOMContentLoaded", function () {
  window.ui = SwaggerUIBundle({
    url: "/api/v1/openapi.json",
    dom_id: "#swagger-ui",
    deepLinking: true,
    validatorUrl: null,
    queryConfigEnabled: false,
    withCredentials: false,
    persistAuthorization: false,
    tryItOutEnabled: false,
    presets: [SwaggerUIBundle.presets.apis],
    layout: "BaseLayout",
  });
});
